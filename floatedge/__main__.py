from floatedge.cli import main

main()
