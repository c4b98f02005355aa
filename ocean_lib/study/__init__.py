"""The study and what the notebooks show: the pipeline of stages, evaluation and report (:mod:`.pipeline`), the
analysis of rollouts, plots, the rollout browser, the GRPO walkthrough, the result table (:mod:`.report`) and
the offline report page (:mod:`.report_html`)."""
