"""BoolQ: a yes/no question about a Wikipedia passage."""
from .base import ClassificationTask

BOOLQ = ClassificationTask(name="boolq", dir_name="BoolQ", hub_config="boolq",
                           label_words=("False", "True"), official_labels=(False, True),
                           fields=("passage", "question"))
