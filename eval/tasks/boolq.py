from eval.tasks.base import Task

BOOLQ = Task(name="boolq", dir_name="BoolQ", hub_config="boolq",
             label_words=("False", "True"), official_labels=(False, True),
             fields=("passage", "question"))
