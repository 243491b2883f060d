from dr.cli import main

main()
