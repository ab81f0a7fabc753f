from fleetimg.cli.main import main

main()
