"""The GRPO core: the loss and advantages (:mod:`.grpo`), model loading (:mod:`.models`), the rollout batch and
the two sampling engines (:mod:`.batch`, :mod:`.rollout`, :mod:`.rollout_vllm`), the training forward
(:mod:`.forward`), the loop (:mod:`.trainer`), its state and checkpoints (:mod:`.run_state`), its metrics, the
process group (:mod:`.distributed`), LoRA, the memory model, and the accelerate launcher (:mod:`.launch`)."""
