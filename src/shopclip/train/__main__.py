"""`python -m shopclip.train CATALOG --out RUN` — also the torchrun entry point:

    torchrun --nproc_per_node=2 -m shopclip.train CATALOG --out runs/x
"""

from shopclip.train.cli import main

if __name__ == "__main__":
    main()
