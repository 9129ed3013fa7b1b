# Board definitions: one package per board, each describing its pins, mechanism and cells.
