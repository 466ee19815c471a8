"""`python -m jadecli` runs the `jade` command line."""

from jadecli.cli import main

if __name__ == "__main__":
    main()
