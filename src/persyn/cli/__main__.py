from persyn.cli.entry import main

main()
