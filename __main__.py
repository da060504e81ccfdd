"""``python -m crx``: the same command line as ``crx``."""

from crx.cli.main import main

if __name__ == "__main__":
    main()
