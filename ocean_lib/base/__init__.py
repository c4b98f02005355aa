"""The ground floor: the run's typed configuration (:mod:`.config`), atomic writes, JSON lines and directory
locks (:mod:`.io`), the project's paths, the prompts shared by training, evaluation and the browser, and the run
directory that is the only interface between training and notebooks (:mod:`.run_dir`). Imports no other group."""
