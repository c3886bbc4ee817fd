"""Thin adapters that give an agent the sandbox as a tool (function calling, LangChain, MCP).

    sandbox_client.adapters.tool        OpenAI- and Anthropic-style function calling (no extra dependency)
    sandbox_client.adapters.langchain   a LangChain tool: pip install 'sandbox-client[langchain]'
    sandbox_client.adapters.mcp         an MCP server, the sandbox-mcp command: pip install 'sandbox-client[mcp]'

Each module is imported on its own: this package imports none of them, so none needs another's dependencies.
"""
