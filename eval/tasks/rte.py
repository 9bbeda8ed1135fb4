from eval.tasks.base import Task

RTE = Task(name="rte", dir_name="RTE", hub_config="rte",
           label_words=("entailment", "not_entailment"),
           official_labels=("entailment", "not_entailment"),
           fields=("hypothesis", "premise"))
