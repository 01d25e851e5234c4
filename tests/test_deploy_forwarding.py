"""`argo-workflows create` and `step-functions create` with a refresh request
deploy task command lines that carry it (`--memoize-refresh-request`), so every
run of the deployment recomputes the named steps.

The specs are compiled with `create --only-json`: no cluster. Both need an S3
datastore (moto). Step Functions also reads its Batch job queue and roles from
AWS while compiling: moto serves those too (see `_sfn_env`). What is not
tested here: deploying to a real Argo or AWS account, and running the deployed
containers; the task side of the option is covered by
test_refresh_forwarding.py (a task replayed from its command line refreshes)
and by `test_deployed_option_makes_a_run_refresh_the_step` below.
"""

import json
import re
import shlex
import uuid

import boto3
import pytest

FLOW = """
from _counter import record
from metaflow import FlowSpec, memoize, step


class DeployFlow(FlowSpec):
    @step
    def start(self):
        self.items = [1, 2]
        self.next(self.train, foreach="items")

    @memoize
    @step
    def train(self):
        record("train")
        self.y = self.input * 2
        self.next(self.join)

    @step
    def join(self, inputs):
        self.ys = sorted(i.y for i in inputs)
        self.next(self.end)

    @memoize
    @step
    def end(self):
        record("end")


if __name__ == "__main__":
    DeployFlow()
"""

STEPS = {"start", "train", "join", "end"}
OPTION = "--memoize-refresh-request"
# `python deploy_flow.py <top-level options> step NAME --run-id ...`
_STEP_COMMAND = re.compile(r"\bdeploy_flow\.py\s(.*?)\sstep\s+(\w+)\s+--run-id\b")
_OFFLOADED = re.compile(r'download_file\("([^"]+)", "([^"]+)", "/tmp/step_command.sh"\)')


def _sfn_env(s3_env):
    """Config and moto resources `step-functions create --only-json` needs."""
    endpoint = s3_env.endpoint_url
    kw = dict(endpoint_url=endpoint, region_name="us-east-1")
    suffix = uuid.uuid4().hex[:10]
    role = boto3.client("iam", **kw).create_role(
        RoleName="memoize-test-" + suffix, AssumeRolePolicyDocument="{}"
    )["Role"]["Arn"]
    ec2 = boto3.client("ec2", **kw)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=suffix, Description="t", VpcId=vpc)["GroupId"]
    batch = boto3.client("batch", **kw)
    compute = batch.create_compute_environment(
        computeEnvironmentName="ce-" + suffix,
        type="MANAGED",
        state="ENABLED",
        computeResources={
            "type": "FARGATE",
            "maxvCpus": 4,
            "subnets": [subnet],
            "securityGroupIds": [group],
        },
        serviceRole=role,
    )
    queue = "queue-" + suffix
    batch.create_job_queue(
        jobQueueName=queue,
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[
            {"order": 1, "computeEnvironment": compute["computeEnvironmentArn"]}
        ],
    )
    return {
        "AWS_ENDPOINT_URL_SFN": endpoint,
        "AWS_ENDPOINT_URL_BATCH": endpoint,
        "METAFLOW_BATCH_JOB_QUEUE": queue,
        "METAFLOW_SFN_IAM_ROLE": role,
        "METAFLOW_ECS_S3_ACCESS_IAM_ROLE": role,
        "METAFLOW_ECS_FARGATE_EXECUTION_ROLE": role,
        "METAFLOW_SFN_DYNAMO_DB_TABLE": "memoize-test-table",  # named, never used
    }


@pytest.fixture
def deploy(runner, s3_env):
    """deploy(target, *create_args, env=None) -> (spec, [(step, top-level words)])"""
    runner.add_flow("deploy_flow.py", FLOW)
    sfn_env = {}

    def compile_spec(target, *create_args, env=None, flow="deploy_flow.py", check=True):
        full_env = dict(s3_env.env, METAFLOW_HOME=str(runner.workdir / "mfhome"))
        if target == "step-functions":
            if not sfn_env:
                sfn_env.update(_sfn_env(s3_env))
            full_env.update(sfn_env)
        full_env.update(env or {})
        result = runner.cli(
            flow,
            "--datastore=s3",
            target,
            "create",
            "--only-json",
            *create_args,
            env=full_env,
            check=check,
        )
        if not check:
            return result
        spec = json.loads(result.stdout)
        return spec, _step_commands(target, spec, s3_env), result

    return compile_spec


def _container_scripts(target, spec):
    """The bash script of every container the deployment starts."""
    if target == "argo-workflows":
        for template in spec["spec"]["templates"]:
            container = template.get("container")
            if container:
                yield (container.get("command") or [])[-1:] + (container.get("args") or [])

    else:

        def states(machine):
            for state in machine["States"].values():
                yield state
                for branch in state.get("Branches", []):
                    yield from states(branch)
                for key in ("Iterator", "ItemProcessor"):
                    if key in state:
                        yield from states(state[key])

        for state in states(spec):
            command = state.get("Parameters", {}).get("ContainerOverrides", {}).get("Command")
            if command:
                yield command[-1:]


def _step_commands(target, spec, s3_env):
    """(step, top-level option words) of every `step` command the containers run;
    scripts offloaded to S3 (--compress-state-machine) are read back from S3."""
    found = []
    for parts in _container_scripts(target, spec):
        for script in parts:
            offloaded = _OFFLOADED.search(script)
            if offloaded:
                body = s3_env.client.get_object(Bucket=offloaded.group(1), Key=offloaded.group(2))
                script = body["Body"].read().decode()
            for segment in script.split("&&"):
                match = _STEP_COMMAND.search(segment)
                if match:
                    found.append((match.group(2), shlex.split(match.group(1))))
    return found


def _requests(top_level):
    """Values of every --memoize-refresh-request among the top-level options."""
    return [top_level[i + 1] for i, word in enumerate(top_level) if word == OPTION]


TARGETS = ["argo-workflows", "step-functions"]


@pytest.mark.parametrize("target", TARGETS)
def test_create_without_refresh_adds_nothing(deploy, target):
    spec, commands, _ = deploy(target)
    assert {step for step, _ in commands} == STEPS
    assert OPTION not in json.dumps(spec)


@pytest.mark.parametrize("target", TARGETS)
def test_create_with_refresh_step_puts_the_request_on_every_task_command(deploy, target):
    spec, commands, result = deploy(target, "--memoize-refresh-step", "train")
    assert {step for step, _ in commands} == STEPS
    assert sum(step == "train" for step, _ in commands) >= 1
    # each task command carries it exactly once, as a top-level option (before `step`)
    for step, top_level in commands:
        assert _requests(top_level) == ["train"], (step, top_level)
    assert "[memoize] this deployment recomputes train on every run" in result.stderr


@pytest.mark.parametrize(
    "create_args, env, expected",
    [
        (("--memoize-refresh",), {}, "1"),
        (("--memoize-refresh-step", "train", "--memoize-refresh-step", "end"), {}, "end,train"),
        ((), {"METAFLOW_MEMOIZE_REFRESH": "train"}, "train"),
        ((), {"METAFLOW_MEMOIZE_REFRESH": "0"}, None),
    ],
    ids=["refresh-all", "two-steps", "environment", "environment-off"],
)
def test_request_forms_reach_the_argo_spec(deploy, create_args, env, expected):
    spec, commands, _ = deploy("argo-workflows", *create_args, env=env)
    assert {step for step, _ in commands} == STEPS
    for step, top_level in commands:
        assert _requests(top_level) == ([expected] if expected else []), (step, top_level)


def test_step_functions_offloaded_commands_carry_the_request(deploy):
    """--compress-state-machine uploads each task's script to S3; those carry it."""
    spec, commands, _ = deploy(
        "step-functions", "--compress-state-machine", "--memoize-refresh-step", "train"
    )
    assert OPTION not in json.dumps(spec)  # the scripts are not in the spec...
    assert {step for step, _ in commands} == STEPS  # ...but read back from S3
    for step, top_level in commands:
        assert _requests(top_level) == ["train"], (step, top_level)


@pytest.mark.slow
def test_deployed_option_makes_a_run_refresh_the_step(deploy, runner):
    """The option exactly as the deployment spells it is accepted by the flow's
    command line and refreshes only the named step."""
    _, commands, _ = deploy("argo-workflows", "--memoize-refresh-step", "train")
    top_level = dict(commands)["train"]
    at = top_level.index(OPTION)
    deployed_option = top_level[at : at + 2]

    runner.run("deploy_flow.py")
    assert runner.executions() == {"train": 2, "end": 1}
    runner.run("deploy_flow.py")
    assert runner.executions() == {"train": 2, "end": 1}  # all hits
    result = runner.cli("deploy_flow.py", *deployed_option, "run")
    assert runner.executions() == {"train": 4, "end": 1}  # train recomputed, end hit
    assert sum("refresh train" in line for line in result.memoize_lines()) == 2


BROKEN_CREATE = """
import runpy, sys
import metaflow.plugins.argo.argo_workflows as compiler
{patch}
sys.argv[0] = "deploy_flow.py"
runpy.run_path("deploy_flow.py", run_name="__main__")
"""


def test_create_fails_when_metaflow_leaves_the_request_off(deploy, runner):
    """A Metaflow whose compiler no longer honours get_top_level_options(): the
    create stops before printing (or deploying) a spec."""
    patch = (
        "original = compiler.dict_to_cli_options\n"
        "compiler.dict_to_cli_options = lambda opts: original(\n"
        "    {k: v for k, v in opts.items() if k != 'memoize-refresh-request'})"
    )
    runner.add_flow("broken_create.py", BROKEN_CREATE.format(patch=patch))
    without = deploy("argo-workflows", flow="broken_create.py")
    assert OPTION not in json.dumps(without[0])  # the simulated change works
    result = deploy(
        "argo-workflows",
        "--memoize-refresh-step",
        "train",
        flow="broken_create.py",
        check=False,
    )
    assert result.returncode != 0
    assert "does not carry it" in result.output and "Nothing was deployed" in result.output
    assert '"apiVersion"' not in result.stdout


def test_create_fails_when_the_compiler_cannot_be_hooked(deploy, runner):
    """A Metaflow whose compiler module lost the hook we wrap: create refuses a
    refresh request up front."""
    runner.add_flow("broken_create.py", BROKEN_CREATE.format(patch="del compiler.flow_decorators"))
    result = deploy("argo-workflows", "--memoize-refresh", flow="broken_create.py", check=False)
    assert result.returncode != 0
    assert "cannot put it on the argo-workflows task command lines" in result.output
    assert "Nothing was deployed" in result.output
    assert '"apiVersion"' not in result.stdout
