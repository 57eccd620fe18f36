"""Training: the one loop every trained method runs in (prompts of every form, LoRA, full fine-tuning).

``train`` (configs, a run, resume), ``loop`` (the loop as steps), ``sweep`` (candidates in shared
passes), ``passes`` (a batch's forward/backward slices), ``reuse`` (a late prompt's frozen layers,
once per row), ``heldout``, ``checkpoint``, ``distributed`` and ``sharding``. Imports core only.
"""
