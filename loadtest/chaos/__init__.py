"""The chaos suite (`make chaos`): see __main__.py for what it does and verdict.py for its bounds."""
