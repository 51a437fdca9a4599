from latentlab.cli import main

main()
