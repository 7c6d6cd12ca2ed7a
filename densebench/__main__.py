from densebench.cli import main

main()
