"""RTE: does the premise entail the hypothesis (two classes)."""
from .base import ClassificationTask

RTE = ClassificationTask(name="rte", dir_name="RTE", hub_config="rte",
                         label_words=("entailment", "not_entailment"),
                         official_labels=("entailment", "not_entailment"),
                         fields=("hypothesis", "premise"))
