import sys

from fmhub.cli import main

if __name__ == "__main__":
    sys.exit(main())
