"""What the tests share: tiny configurations and recipes, the authors' fixture, a fake Hub, and the worker and
probe programs that multi-process tests start."""
