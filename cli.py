"""`python cli.py …` is the same as `selfplay …`."""
from selfplay.cli import main

if __name__ == "__main__":
    main()
