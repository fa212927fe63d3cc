"""Command line ``python -m scripts.synthetic``: see :func:`scripts.data.synthetic.main`."""

from .data.synthetic import main

if __name__ == "__main__":
    main()
