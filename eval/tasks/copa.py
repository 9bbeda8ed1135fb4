"""COPA: which of two choices is the cause (or effect) of the premise.

T5 keeps the official row whole (both choices in one source) and answers with the choice's *name*
("choice1"/"choice2"), not its text, so rank classification scores two short words."""
from .base import ClassificationTask

COPA = ClassificationTask(name="copa", dir_name="COPA", hub_config="copa",
                          label_words=("choice1", "choice2"), official_labels=(0, 1),
                          fields=("choice1", "choice2", "premise", "question"))
