from s3_server import *  # noqa: F401,F403
