from couponsvc.cli import main

main()
