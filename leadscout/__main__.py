from leadscout.cli import main

main()
