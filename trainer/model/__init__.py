"""The prompted model: a soft prompt before a frozen backbone, the shared prefix, several prompts at once."""
