"""``python -m pipeline <command>``: the commands of the ``lip`` console script (pipeline.run.commands)."""

if __name__ == "__main__":
    from pipeline.run.commands import main

    main()
