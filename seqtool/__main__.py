"""`python -m seqtool` (also what torchrun runs)."""

from seqtool.cli import main

if __name__ == "__main__":
    main()
