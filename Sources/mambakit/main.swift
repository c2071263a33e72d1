import MambaKit
print("mambakit")
