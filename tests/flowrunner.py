"""Runs real flows in subprocesses, in a private directory, and reads back what happened.

Each test gets its own working directory (so its own local datastore and its
own default cache), copies of the flow files it needs, and a counter directory
where flows record every execution of a step body (see tests/flows/_counter.py).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Optional

FLOWS_DIR = Path(__file__).parent / "flows"
REPO_ROOT = Path(__file__).parent.parent

_RUN_ID_RE = re.compile(r"run-id (\S+?)\)?:")

_DUMP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from metaflow import Flow, namespace
    namespace(None)
    flow_name, run_id, what = sys.argv[1], sys.argv[2], sys.argv[3]
    run = Flow(flow_name)[run_id]
    out = {}
    for step in run:
        tasks = []
        for task in step:
            if what == "metadata":
                md = task.metadata_dict
                tasks.append({k: v for k, v in md.items() if k.startswith("memoize_")})
            else:
                arts = {}
                for a in task.artifacts:
                    if a.id.startswith("_") or a.id == "name":
                        continue
                    arts[a.id] = repr(a.data)
                tasks.append(arts)
        out[step.id] = sorted(tasks, key=lambda t: json.dumps(t, sort_keys=True))
    print(json.dumps(out, sort_keys=True))
    """
)


class FlowResult:
    def __init__(self, proc: subprocess.CompletedProcess, run_id: Optional[str]):
        self.proc = proc
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.output = proc.stdout + proc.stderr
        self.run_id = run_id

    def memoize_lines(self) -> List[str]:
        return [line for line in self.output.splitlines() if "[memoize]" in line]

    def launched_steps(self) -> set:
        """Steps for which the runtime started a task process (not cloned hits)."""
        return {
            line.split("/")[1]
            for line in self.output.splitlines()
            if "Task is starting." in line and "/" in line
        }

    def __repr__(self):
        return "FlowResult(rc=%s, run_id=%s)\n%s" % (
            self.returncode,
            self.run_id,
            self.output[-6000:],
        )


class FlowRunner:
    def __init__(self, workdir: Path, extra_env: Optional[Dict[str, str]] = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.counter_dir = self.workdir / "counters"
        self.counter_dir.mkdir(exist_ok=True)
        # Metaflow creates the local datastore with a bare mkdir: runs started at
        # once in a new directory race on it (FileExistsError)
        (self.workdir / ".metaflow").mkdir(exist_ok=True)
        self.extra_env = dict(extra_env or {})
        shutil.copy(FLOWS_DIR / "_counter.py", self.workdir / "_counter.py")

    def env(self, overrides: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("METAFLOW_") and not k.startswith("PYTEST")
        }
        env.update(
            {
                "USERNAME": "tester",
                "METAFLOW_DEFAULT_DATASTORE": "local",
                "METAFLOW_DEFAULT_METADATA": "local",
                "MEMOIZE_TEST_COUNTERS": str(self.counter_dir),
                "PYTHONHASHSEED": "random",
            }
        )
        env.update(self.extra_env)
        env.update(overrides or {})
        return env

    def add_flow(
        self, name: str, source: Optional[str] = None, target: Optional[str] = None
    ) -> Path:
        """Copy tests/flows/<name> (or write ``source``) into the work directory."""
        path = self.workdir / (target or name)
        if source is not None:
            path.write_text(textwrap.dedent(source))
        else:
            shutil.copy(FLOWS_DIR / name, path)
        return path

    def run(
        self,
        flow_file: str,
        *args: str,
        env: Optional[Dict[str, str]] = None,
        command: str = "run",
        check: bool = True,
        timeout: int = 300,
        cwd: Optional[Path] = None,
    ) -> FlowResult:
        cmd = [sys.executable, flow_file, "--no-pylint", command, *args]
        proc = subprocess.run(
            cmd,
            cwd=cwd or self.workdir,
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        match = _RUN_ID_RE.search(proc.stdout + proc.stderr)
        result = FlowResult(proc, match.group(1) if match else None)
        if check:
            assert proc.returncode == 0, repr(result)
        return result

    def cli(
        self,
        flow_file: str,
        *args: str,
        env: Optional[Dict[str, str]] = None,
        check: bool = True,
        input: Optional[str] = None,
    ) -> FlowResult:
        cmd = [sys.executable, flow_file, "--no-pylint", *args]
        proc = subprocess.run(
            cmd,
            cwd=self.workdir,
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=300,
            input=input if input is not None else "",
        )
        result = FlowResult(proc, None)
        if check:
            assert proc.returncode == 0, repr(result)
        return result

    def executions(self, step: Optional[str] = None) -> Dict[str, int]:
        """How many times each step body ran (all runs so far)."""
        counts: Dict[str, int] = {}
        for f in self.counter_dir.iterdir():
            name = f.name.split("--")[0]
            counts[name] = counts.get(name, 0) + len(f.read_text().splitlines())
        return counts if step is None else {step: counts.get(step, 0)}

    def count(self, step: str) -> int:
        return self.executions().get(step, 0)

    def client_json(self, script: str, *args: str, env=None):
        """Run a Client API script in this directory's environment; its last line, as JSON."""
        proc = subprocess.run(
            [sys.executable, "-c", script, *args],
            cwd=self.workdir,
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def _dump(self, flow_name: str, run_id: str, what: str, env=None):
        return self.client_json(_DUMP_SCRIPT, flow_name, run_id, what, env=env)

    def artifacts(self, flow_name: str, run_id: str, env=None) -> Dict[str, List[Dict[str, str]]]:
        """{step: [ {artifact: repr(value)} per task ]} for every user artifact of a run."""
        return self._dump(flow_name, run_id, "artifacts", env)

    def metadata(self, flow_name: str, run_id: str, env=None) -> Dict[str, List[Dict[str, str]]]:
        """{step: [ {memoize_*: value} per task ]}."""
        return self._dump(flow_name, run_id, "metadata", env)
