import sys

from mcpstore_proxy.cli import main

sys.exit(main())
