"""Write a synthetic CK+ copy: `python synthetic.py OUT_DIR --subjects N` (the generator is ckplus/synthetic.py)."""
import sys

from ckplus import synthetic

if __name__ == "__main__":
    sys.exit(synthetic.cli())
