from lowshot.cli import main

main()
