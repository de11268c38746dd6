"""Helpers the tests share: free ports, managed server processes, real peers on 127.0.0.1."""
