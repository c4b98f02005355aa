"""The command line (``python -m ocean_lib``, :mod:`.main`) and the GPU check (:mod:`.gpu_check`)."""
