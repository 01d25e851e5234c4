import sys

from setuptools import Extension, find_namespace_packages, setup

VERSION = "0.1.0"

# Records the file access of native code and child processes of a step body
# (key/_fsrecord.c, an LD_PRELOAD library; key/native.py). Optional, Linux only:
# where it cannot be built, a child process makes the step miss instead.
FSRECORD = (
    [
        Extension(
            "metaflow_extensions.memoize.plugins.memoize.key._fsrecord",
            ["metaflow_extensions/memoize/plugins/memoize/key/_fsrecord.c"],
            libraries=["dl", "pthread"],
            extra_compile_args=["-fvisibility=hidden", "-O2"],
            optional=True,
        )
    ]
    if sys.platform.startswith("linux")
    else []
)

setup(
    name="metaflow-memoize",
    version=VERSION,
    description="Cross-run memoization of Metaflow steps: skip steps whose code and inputs are unchanged.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    # `metaflow_extensions` itself too (a namespace: no file of its own), so that
    # an editable install maps it to the checkout and Metaflow finds the extension
    packages=find_namespace_packages(include=["metaflow_extensions", "metaflow_extensions.*"]),
    install_requires=[
        # 2.12.37: the first release with the CLI components and Config the extension
        # builds on; every minor since is tested (make test-compat), and a newer one
        # is checked at run time (docs/compatibility.md): no upper bound
        "metaflow>=2.12.37",
        "boto3>=1.28",
        "cloudpickle>=2.0",
        "xxhash>=3.0",
    ],
    extras_require={
        # cache roots on Google Cloud Storage (gs://) and Azure Blob Storage
        # (azure://): the client libraries Metaflow's own GCS and Azure datastores use
        "gcs": ["google-cloud-storage>=2.7"],
        "azure": ["azure-storage-blob>=12.9", "azure-identity>=1.10"],
        "test": [
            "pytest>=7",
            "pytest-xdist>=3",
            "moto[server]>=5",
            # the gcs and azure extras, and a GCS emulator (Azure's, Azurite, comes
            # from npm: `make install` puts it in .tools/)
            "google-cloud-storage>=2.7",
            "azure-storage-blob>=12.9",
            "azure-identity>=1.10",
            "gcp-storage-emulator>=2024.1",
            # `argo-workflows create --only-json` (tests/test_deploy_forwarding.py)
            # checks that the Kubernetes client is importable
            "kubernetes",
            "ruff>=0.5",
            # NBRunner (tests/test_runner.py) runs notebook cells in an IPython shell
            "ipython",
            # native readers whose file access the native file recorder must see
            # (tests/test_native_record.py)
            "pyarrow",
            "duckdb",
            # tutorial 04 (tests/tutorials, tests/test_client_reads.py) without its
            # @conda decorator
            "editdistance",
        ],
    },
    # Records the code a step body runs (observed dependencies): a frame-evaluation
    # hook, or a C profile function where the hook cannot be used (key/_tracer.c).
    # Optional: where it cannot be compiled, a pure-Python recorder is used (slower
    # on call-heavy bodies, same result; make test-python fails on it). Python
    # 3.12+ uses sys.monitoring.
    ext_modules=FSRECORD
    + (
        []
        if sys.version_info >= (3, 12)
        else [
            Extension(
                "metaflow_extensions.memoize.plugins.memoize.key._tracer",
                ["metaflow_extensions/memoize/plugins/memoize/key/_tracer.c"],
                optional=True,
            )
        ]
    ),
    entry_points={
        "console_scripts": [
            "metaflow-memoize=metaflow_extensions.memoize.plugins.memoize.cli.standalone:main",
        ],
    },
)
