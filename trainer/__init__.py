"""Fine-tuning and classification for supportbot. Knows nothing of Slack or SQL.

Import the submodules you need; heavy libraries load inside functions.
"""
