from enclip_qdrant.cli.app import main

main()
