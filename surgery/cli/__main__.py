"""``python -m surgery.cli`` runs the ``surgery`` command."""

from surgery.cli.main import main

if __name__ == "__main__":
    main()
