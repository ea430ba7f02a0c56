"""Meta-learning: tasks, inner loops, meta-training (``tsmeta.meta.train``)."""

# The meta-learners ``MetaConfig.algorithm`` accepts (described in tsmeta.meta.train); here,
# without torch, so settings and the CLI can name them cheaply.
ALGORITHMS = ("maml", "fomaml", "anil", "ridge", "metasgd", "pretrain")
