"""Run the notebooks headless with papermill: `python ci/run_notebooks.py --profile smoke [notebooks...]`.

The logic lives in f2llm_lib.tooling.notebook_runner so that the tests, the CLI (`f2llm notebooks`) and CI share it.
"""

import sys

from f2llm_lib.tooling.notebook_runner import main

if __name__ == "__main__":
    sys.exit(main())
