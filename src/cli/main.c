#include "distml.h"
#include <stdio.h>
int main(void) { printf("distml %s\n", dml_version()); return 0; }
