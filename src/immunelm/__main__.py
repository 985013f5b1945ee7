from immunelm.cli.main import main

main()
