"""WiC: is `word` used in the same sense in both sentences. T5 writes only the sentences and the
word; the character offsets (start1/end1/start2/end2) are not part of the source."""
from .base import ClassificationTask

WIC = ClassificationTask(name="wic", dir_name="WiC", hub_config="wic",
                         label_words=("False", "True"), official_labels=(False, True),
                         fields=("sentence1", "sentence2", "word"))
