"""`python -m digestbot` runs the command-line interface."""

from digestbot.cli import main

if __name__ == "__main__":
    main()
