"""Run several repo CLI scripts one after another in ONE process, so that TensorFlow starts
once (tests start it once per numeric configuration instead of once per script):

  python tests/run_scripts.py SCRIPT ARGS... [--- SCRIPT ARGS...]

Prints each script's command, stdout and stderr; exits with the first failing script's exit
code (the scripts after it are not run).
"""
import sys

from helpers import run_script_in_process  # the repo's packages: PYTHONPATH (helpers.py)

SEPARATOR = "---"


def main(argv):
    commands, current = [], []
    for arg in argv + [SEPARATOR]:
        if arg == SEPARATOR:
            if current:
                commands.append(current)
            current = []
        else:
            current.append(arg)
    for script, *args in commands:
        code, out, err = run_script_in_process(script, args)
        print(f"$ {script} {' '.join(args)}\n{out}{err}", end="", flush=True)
        if code:
            print(f"exit {code}", flush=True)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
