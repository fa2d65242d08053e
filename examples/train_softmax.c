/* Example: train a model with libdistml from your own program. Loads a data set (a path, or
 * "fashion-mnist"), trains softmax regression locally for a few epochs and prints the test
 * accuracy. Build: cc train_softmax.c $(pkg-config --cflags --libs distml) -o train_softmax
 * Run:   ./train_softmax fashion-mnist */
#include <stdio.h>

#include "distml.h"

int main(int argc, char **argv) {
  const char *spec = argc > 1 ? argv[1] : "fashion-mnist";
  dml_err err = {0};
  dml_dataset train = {0}, test = {0};
  char test_spec[256];
  snprintf(test_spec, sizeof(test_spec), "%s:test", spec);
  if (dml_dataset_load(spec, "auto", NULL, &train, &err) != 0 ||
      dml_dataset_load(test_spec, "auto", NULL, &test, &err) != 0) {
    fprintf(stderr, "example: %s\n", dml_err_msg(&err));
    return 1;
  }
  dml_train_config cfg;
  dml_train_config_init(&cfg);
  dml_model_config_init(&cfg.model, DML_MODEL_SOFTMAX, train.dim, train.num_classes);
  dml_optim_config_init(&cfg.optim, DML_OPT_ADAM);
  cfg.optim.lr = 0.001f;
  cfg.epochs = 3;
  cfg.progress = 1;
  dml_train_result res;
  int rc = dml_train_run(&cfg, &train, &test, NULL, &res, &err);
  if (rc != 0)
    fprintf(stderr, "example: training failed: %s\n", dml_err_msg(&err));
  else
    printf("test accuracy %.4f after %d epochs (%.0f samples/s)\n", res.test_accuracy,
           res.epochs_done, res.samples_per_s);
  dml_dataset_free(&train);
  dml_dataset_free(&test);
  return rc == 0 ? 0 : 1;
}
