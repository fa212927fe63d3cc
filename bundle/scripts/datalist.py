"""Command line ``python -m scripts.datalist``: see :func:`scripts.data.datalist.main`."""

from .data.datalist import main

if __name__ == "__main__":
    main()
