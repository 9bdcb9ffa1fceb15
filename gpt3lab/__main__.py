from gpt3lab.cli import main

raise SystemExit(main())
