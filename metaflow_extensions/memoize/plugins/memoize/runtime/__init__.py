"""Where @memoize meets a run: the decorator, hits decided in the orchestrator, the dry run and explanations."""
