"""What identifies a task: pure key components, code and input identity, and the dependencies observed while a step runs."""
